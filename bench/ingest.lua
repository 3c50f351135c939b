-- wrk script: the webhooks of ever new messages, in the order NXCLOUD sends them: three
-- delivery receipts per message (success with a cost, delivered, seen) and, for every seventh
-- message, the user's reply. Concurrent connections contend for the same hot rows (counters,
-- rollups) as real traffic does.
-- Usage: wrk -s bench/ingest.lua URL -- <run tag> [noop]
-- With "noop", every request goes to /bench/noop instead (same bodies, no database work).
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local statuses = {
  {"success", 0, "Successfully sent."},
  {"delivered", 11001, "Viber message has delivered"},
  {"seen", 11002, "Viber message has seen"},
}
local counter = 0
local tag = "r"
local noop = false
local headers = {["Content-Type"] = "application/json"}
local cost = ',"cost":{"currency":"USD","localPrice":0.012,"originalPrice":0.012,"rateType":"Transactional"}'

function init(args)
  tag = args[1] or "r"
  noop = args[2] == "noop"
  counter = 0
end

-- Message n takes 3 requests, or 4 when n is a multiple of 7 (its reply comes last).
local function position(k)
  local block = math.floor(k / 22)   -- 7 messages: 6 x 3 + 1 x 4 = 22 requests
  local rest = k % 22
  if rest < 4 then
    return block * 7, rest
  end
  rest = rest - 4
  return block * 7 + 1 + math.floor(rest / 3), rest % 3
end

function request()
  local n, step = position(counter)
  counter = counter + 1
  local rid = string.format("b%s%02d%020d", tag, tid, n)
  local path, body
  if step == 3 then
    path = "/webhooks/viber/message"
    body = string.format(
      '{"phone":"7%02d%08d","appkey":"BENCH01","traceRequestId":"%s","message":{"text":"Thanks!"},' ..
      '"sendTime":"2024-05-01 10:05:00"}', tid, n, rid)
  else
    local s = statuses[step + 1]
    path = "/webhooks/viber/dr"
    body = string.format(
      '{"status":"%s","requestId":"%s","code":%d,"message":"%s","sendTime":"2024-05-01 10:00:00"%s}',
      s[1], rid, s[2], s[3], s[1] == "success" and cost or "")
  end
  if noop then
    path = "/bench/noop"
  end
  return wrk.format("POST", path, headers, body)
end

-- The share of answers slower than `limit` microseconds, from the latency percentiles.
local function share_over(latency, limit)
  if latency.max <= limit then
    return 0
  end
  local low, high = 0, 100
  for _ = 1, 40 do
    local mid = (low + high) / 2
    if latency:percentile(mid) > limit then high = mid else low = mid end
  end
  return (100 - high) / 100
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"over_2s": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    math.ceil(share_over(latency, 2000000) * summary.requests)))
end
