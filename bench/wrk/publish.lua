-- Retained publish: POST /topics/bench%2Ft%2F<n>?qos=1&retain=true, n random in 0..99999,
-- 256-byte binary body (one of 64 random bodies made per thread at start).
dofile((os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/common.lua")

expect = '"OK"'
local bodies = {}
local headers = { ["Content-Type"] = "application/octet-stream" }
local k = 0

function scenario_init(args)
   for i = 1, 64 do
      local b = {}
      for j = 1, 256 do b[j] = string.char(math.random(0, 255)) end
      bodies[i] = table.concat(b)
   end
end

function request()
   k = k % #bodies + 1
   local path = "/topics/bench%2Ft%2F" .. math.random(0, 99999) .. "?qos=1&retain=true"
   return wrk.format("POST", path, headers, bodies[k])
end
