-- Shared by the wrk scenarios (loaded with dofile by each of them).
--
-- Every thread counts responses that are not 2xx, or whose body lacks the text the scenario
-- expects, and done() prints one machine-readable line that bench/run.sh parses:
--   BENCH requests=... duration_us=... rps=... p50_us=... p99_us=... max_us=... non2xx=...
--         bad_body=... socket_errors=...
-- plus "BENCH first_error=..." with the first bad response when there is one.

local threads = {}

-- The threads, for scenarios whose done() adds up their own counters.
function threads_list() return threads end

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

non2xx = 0
bad_body = 0
first_error = nil

function init(args)
   -- Each thread has its own Lua state; give each its own random sequence.
   math.randomseed(os.time() * 1000 + (id or 0) * 7919)
   if scenario_init then scenario_init(args) end
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      first_error = first_error or (status .. " " .. string.sub(body or "", 1, 200))
   elseif expect and not string.find(body or "", expect, 1, true) then
      bad_body = bad_body + 1
      first_error = first_error or (status .. " body without " .. expect .. ": " .. string.sub(body or "", 1, 200))
   end
end

function done(summary, latency, requests)
   local n2, bad, first = 0, 0, nil
   for _, t in ipairs(threads) do
      n2 = n2 + (t:get("non2xx") or 0)
      bad = bad + (t:get("bad_body") or 0)
      first = first or t:get("first_error")
   end
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d max_us=%d non2xx=%d bad_body=%d socket_errors=%d\n",
      summary.requests, summary.duration, summary.requests / summary.duration * 1e6,
      latency:percentile(50), latency:percentile(99), latency.max,
      n2, bad, e.connect + e.read + e.write + e.timeout))
   if first then
      io.write("BENCH first_error=" .. string.gsub(first, "\n", " ") .. "\n")
   end
end
