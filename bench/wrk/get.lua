-- GetRetainedMessage: GET /retainedMessage/bench%2Ft%2F<n>, n random in 0..99999 (all preloaded,
-- so anything but a 200 with a payload is an error).
dofile((os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/common.lua")

expect = '"payload"'

function request()
   return wrk.format("GET", "/retainedMessage/bench%2Ft%2F" .. math.random(0, 99999))
end
