-- wrk script: NXCLOUD send calls, each to a phone of its own, with the signing headers as a
-- sending system sends them; to NXCLOUD's send API directly, or through viberwatch's proxy.
-- Usage: wrk -s bench/proxy.lua URL -- <path, with its query> <run tag> [<pace ms>]
-- With a pace, each connection waits that long before each call (a fixed, unsaturated rate).
local path = "/api/viber/mt"
local tag = "p"
local counter = 0
local threads = {}
local next_id = 0
local headers = {
  ["Content-Type"] = "application/json",
  ["accessKey"] = "bench-access-key",
  ["ts"] = "1700000000000",
  ["bizType"] = "7",
  ["action"] = "mt",
  ["sign"] = "0123456789abcdef0123456789abcdef",
}

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  path = args[1] or path
  tag = args[2] or tag
  counter = 0
  local pace = tonumber(args[3] or "0")
  if pace > 0 then
    -- wrk looks for delay() after init: defined only when pacing, so unpaced calls go at once.
    delay = function() return pace end
  end
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"appkey":"BENCH01","phone":"+7%s%02d%07d","functionType":"text",' ..
    '"messageData":{"rateType":"Transactional","text":"Your code is %d"}}',
    tag, tid, counter, counter)
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
