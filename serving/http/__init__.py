"""The OpenAI-compatible HTTP API of `pagedjax serve --http-port N`.

Modules: `errors` (OpenAI's error shape and statuses), `protocol` (request
bodies -> validated `ParsedRequest`), `responses` (completion / chat bodies and
stream chunks), `auth` (the `authenticate` hook and tenant cache salts),
`events` (the engine loop -> asyncio bridge), `app` (the aiohttp handlers) and
`server` (the aiohttp server on a thread of its own, beside gRPC).
"""
