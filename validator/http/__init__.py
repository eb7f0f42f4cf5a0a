"""The HTTP door of the validator, one job per module: `operations` (the table), `decoding`
(from a request to a checked `Call`), `handlers`, `middleware` (access log, metrics, JSON
500) and `metrics`. `validator.app.create_app` assembles them."""
