-- Fills retaind's read cache before the get scenario, as the preload left Postgres' buffer cache
-- full of the table for pgbench's select: GET every topic once, in order. Thread i of T reads
-- topics i, i + T, i + 2T, ... starting at round `args[1]` (T is `args[2]`), and done() prints
-- how many rounds every thread has had answered, so that bench/run.sh can repeat short runs
-- until all 100,000 topics have been read (it steps back by the requests a thread may still
-- have had in flight, which may have been older rounds).
dofile((os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/common.lua")

expect = '"payload"'
local first_round, threads_n, sent = 0, 1, 0 -- per thread (each has its own Lua state)
answered = 0

function scenario_init(args)
   first_round = tonumber(args[1]) or 0
   threads_n = tonumber(args[2]) or 1
end

function request()
   local n = (first_round + sent) * threads_n + (id - 1)
   sent = sent + 1
   return wrk.format("GET", "/retainedMessage/bench%2Ft%2F" .. (n % 100000))
end

local base_response = response
function response(status, headers, body)
   answered = answered + 1
   base_response(status, headers, body)
end

local base_done = done
function done(summary, latency, requests)
   base_done(summary, latency, requests)
   local least = nil
   for _, t in ipairs(threads_list()) do
      local a = t:get("answered") or 0
      if least == nil or a < least then least = a end
   end
   io.write(string.format("BENCH rounds_answered=%d\n", least or 0))
end
