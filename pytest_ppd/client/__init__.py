"""The measurement client: exact-token workloads, a streaming SSE client, the round runner."""
