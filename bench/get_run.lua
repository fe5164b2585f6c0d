-- wrk script: GET /v1/flow/<FLOW_ID>/run/<RUN_ID>, key from the environment.
wrk.headers["Authorization"] = "Bearer " .. os.getenv("FLOWD_API_KEY")
wrk.path = "/v1/flow/" .. os.getenv("FLOWD_FLOW_ID") .. "/run/" .. os.getenv("FLOWD_RUN_ID")
