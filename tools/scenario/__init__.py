"""QA scenarios and the drift study, behind `foblab scenario`.

- `spec`: the TOML scenario file, parsed into a `Scenario` (errors carry the line number);
- `engine`: runs a scenario's timeline against a token and a validator, in-process with
  simulated time (the real firmware over an in-memory port, the real `Validator` service
  over a temporary SQLite file) or, through `live`, against a running daemon and a token on
  a serial port;
- `report`: the readable timeline, JSON and JUnit XML;
- `study`: the Monte Carlo drift study over a token population and three drift policies.

Only this package (under `tools/`) combines `firmware_sim` and `validator`.
"""
