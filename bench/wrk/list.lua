-- ListRetainedMessages, first page: GET /retainedMessage (default page size, 50). With 100,000
-- topics stored, a correct first page always carries a nextToken.
dofile((os.getenv("BENCH_WRK_DIR") or "bench/wrk") .. "/common.lua")

expect = '"nextToken"'

function request()
   return wrk.format("GET", "/retainedMessage")
end
