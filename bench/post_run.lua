-- wrk script: POST /v1/flow/<FLOW_ID>/run with a small body, key from the environment.
wrk.method = "POST"
wrk.body = '{"topic":"cats"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("FLOWD_API_KEY")
wrk.path = "/v1/flow/" .. os.getenv("FLOWD_FLOW_ID") .. "/run"
