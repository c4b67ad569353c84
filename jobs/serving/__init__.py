"""`lma3d serve`: a Ray Serve application over one model (config, HTTP API, model holder, deployment, page)."""
