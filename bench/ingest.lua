-- wrk script: delivery receipts for ever new messages, three per message (success, delivered,
-- seen), so concurrent connections contend for the same message rows as real traffic does.
-- Usage: wrk -s bench/ingest.lua URL -- <run tag>
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
local headers = {["Content-Type"] = "application/json"}

function init(args)
  tag = args[1] or "r"
  counter = 0
end

function request()
  counter = counter + 1
  local n = math.floor((counter - 1) / 3)
  local s = statuses[((counter - 1) % 3) + 1]
  local rid = string.format("b%s%02d%020d", tag, tid, n)
  local cost = ""
  if s[1] == "success" then
    cost = ',"cost":{"currency":"USD","localPrice":0.012,"originalPrice":0.012,"rateType":"Transactional"}'
  end
  local body = string.format(
    '{"status":"%s","requestId":"%s","code":%d,"message":"%s","sendTime":"2024-05-01 10:00:00"%s}',
    s[1], rid, s[2], s[3], cost)
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
