"""The RADIUS door (RFC 2865 PAP, RFC 3579 Message-Authenticator, RFC 5080 duplicates).

`codec` is the only module that speaks pyrad; `server` holds the exchange (`RadiusDoor`,
socket-free) and the UDP loop (`RadiusListener`) the daemon runs beside uvicorn. Like every
door it goes through `validator.service`, never the store or the core. Needs the `radius`
extra (pyrad).
"""
