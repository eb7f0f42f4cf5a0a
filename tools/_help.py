"""Help that reads well: every command's `--help` ends with examples, and a group's command
list shows each command's first line whole (click's default cuts it at 45 characters or at
the "e.g." of its first sentence).

The examples live here, in one table keyed by the command's path, so they are written (and
tested: tests/tools/test_help.py walks every command) in one place and stay out of the
command modules. `decorate(cmd, path)` attaches them to a command tree as it is loaded.
"""

from __future__ import annotations

import click

EXAMPLES: dict[str, tuple[str, ...]] = {
    "": ("foblab demo", "foblab sim run --qa --serial GAHT12345678 --pty-link fob"),
    "demo": ("foblab demo", "foblab demo --json"),
    "sim": ("foblab sim run --qa --serial GAHT12345678 --pty-link fob",
            "foblab sim fleet --count 100 --dir fleet --qa"),
    "sim run": ("foblab sim run --qa --serial GAHT12345678 --pty-link fob",
                "foblab sim run --model event --tcp 127.0.0.1:7001 --json"),
    "sim fleet": ("foblab sim fleet --count 100 --dir fleet --qa --rng-seed 1",
                  "foblab sim fleet --config fleet.toml --dir fleet --json"),
    "sim panel": ("foblab sim panel --dir fleet",
                  "foblab sim panel --token socket://127.0.0.1:7001"),
    "token": ("foblab token press fob", "foblab token info socket://127.0.0.1:7001 --json"),
    "token info": ("foblab token info fob", "foblab token info /dev/ttyUSB0 --json"),
    "token press": ("foblab token press fob", "foblab validator verify alice "
                    "$(foblab token press fob -q) --dir lab"),
    "token display": ("foblab token display fob",),
    "token clock": ("foblab token clock fob", "foblab token clock fob --json"),
    "token watch": ("foblab token watch fob", "foblab token watch fob --press-every 60s"),
    "token provision": ("foblab token provision fob --seed-hex "
                        "3132333435363738393031323334353637383930",
                        "foblab token provision fob --seed-hex 3132... --kind hotp --digits 8"),
    "token qa": ("foblab token qa drift fob 40", "foblab token qa age fob 365d"),
    "token qa drift": ("foblab token qa drift fob 40",
                       "foblab token qa drift fob -12.5 --temp 5 --swing 8"),
    "token qa offset": ("foblab token qa offset fob 90s", "foblab token qa offset fob -15m"),
    "token qa age": ("foblab token qa age fob 365d",),
    "token qa set-time": ("foblab token qa set-time fob 2033-05-18T03:33:20Z",),
    "token qa freeze": ("foblab token qa freeze fob",),
    "token qa unfreeze": ("foblab token qa unfreeze fob",),
    "token qa next": ("foblab token qa next fob",
                      "foblab validator verify alice $(foblab token qa next fob -q) --dir lab"),
    "token qa peek": ("foblab token qa peek fob --count 2", "foblab token qa peek fob --json"),
    "token qa battery": ("foblab token qa battery fob dead",
                         "foblab token qa battery fob replaced"),
    "token qa reset": ("foblab token qa reset fob",),
    "validator": ("foblab validator init lab", "foblab validator serve --dir lab"),
    "validator init": ("foblab validator init lab",
                       "foblab validator init /var/lib/foblab --port 8700 --show-keys",
                       "foblab validator init lab --database-url postgresql://foblab@db/foblab"),
    "validator serve": ("foblab validator serve --dir lab",
                        "foblab validator serve --dir lab --station bench1=/dev/ttyUSB0",
                        "foblab validator serve --dir lab --workers 2",
                        "foblab validator serve --dir lab --log-format text"),
    "validator migrate": ("foblab validator migrate --dir lab",
                          "foblab validator migrate --database postgresql://foblab@db/foblab"),
    "validator copy": ("foblab validator copy --from lab/validator.db --to "
                       "postgresql://foblab@db/foblab",),
    "validator verify": ("foblab validator verify alice 287082 --dir lab",
                         "FOBLAB_URL=http://127.0.0.1:8700 FOBLAB_KEY=$(cat lab/verifier.key) "
                         "foblab validator verify alice 287082"),
    "validator audit": ("foblab validator audit --dir lab",
                        "foblab validator audit --user alice --all --json --dir lab",
                        "foblab validator audit export --since 24h --dir lab"),
    "validator audit export": ("foblab validator audit export --since 24h --dir lab",
                               "foblab validator audit export --since 2026-11-01T00:00:00Z "
                               "--until 2026-12-01T00:00:00Z --dir lab > audit.jsonl"),
    "validator rotate-key": ("foblab validator rotate-key --dir lab",
                             "foblab validator rotate-key --master --dir lab"),
    "validator reload": ("foblab validator reload --dir lab",
                         "foblab validator reload --url https://otp.example:8700 "
                         "--key-file lab/admin.key --ca-file ca.pem"),
    "validator api-keys": ("foblab validator api-keys create radius-gw --role verifier "
                           "--dir lab", "foblab validator api-keys list --dir lab"),
    "validator api-keys create": ("foblab validator api-keys create radius-gw --role "
                                  "verifier --dir lab",
                                  "foblab validator api-keys create ops --role admin --dir lab "
                                  "--json"),
    "validator api-keys list": ("foblab validator api-keys list --dir lab",
                                "foblab validator api-keys list --dir lab --json"),
    "validator api-keys revoke": ("foblab validator api-keys revoke radius-gw --dir lab",),
    "validator backup": ("foblab validator backup --dir lab lab.backup",
                         "foblab validator backup --dir lab --passphrase-file pass.txt "
                         "lab.backup"),
    "validator restore": ("foblab validator restore lab.backup lab2",
                          "foblab validator restore lab.backup lab2 --passphrase-file "
                          "pass.txt"),
    "validator check": ("foblab validator check --dir lab",
                        "foblab validator check --dir lab --json"),
    "validator token": ("foblab validator token import seeds.pskc --dir lab",
                        "foblab validator token list --dir lab"),
    "validator token add": ("foblab validator token add GAHT12345678 --seed-hex "
                            "3132333435363738393031323334353637383930 --dir lab",),
    "validator token import": ("foblab validator token import GAHT12345678.pskc --dir lab",
                               "foblab validator token import fleet/seeds.pskc "
                               "--skip-duplicates --dir lab"),
    "validator token list": ("foblab validator token list --dir lab",
                             "foblab validator token list --unassigned --all --json --dir lab"),
    "validator token show": ("foblab validator token show GAHT12345678 --dir lab",),
    "validator token remove": ("foblab validator token remove GAHT12345678 --dir lab",),
    "validator token unlock": ("foblab validator token unlock GAHT12345678 --dir lab",),
    "validator device": ("foblab validator device list alice --dir lab",),
    "validator device enable": ("foblab validator device enable alice GAHT12345678 "
                                "$(foblab token qa peek fob --count 2) --dir lab",
                                "foblab validator device enable alice GAHT12345678 "
                                "FIRST SECOND --dir lab"),
    "validator device list": ("foblab validator device list alice --dir lab",),
    "validator device deactivate": ("foblab validator device deactivate alice GAHT12345678 "
                                    "--dir lab",),
    "validator device resync": ("foblab validator device resync alice GAHT12345678 "
                                "FIRST SECOND --dir lab",),
    "validator station": ("foblab validator station list --dir lab",),
    "validator station list": ("foblab validator station list --dir lab",),
    "validator station info": ("foblab validator station info bench1 --dir lab",),
    "validator station enroll": ("foblab validator station enroll bench1 bob --provision "
                                 "--dir lab",),
    "validator radius": ("foblab validator radius test alice 287082 --secret-file "
                         "lab/radius-vpn.secret",),
    "validator radius test": ("foblab validator radius test alice 287082 --secret-file "
                              "lab/radius-vpn.secret",
                              "foblab validator radius test alice 287082 --server "
                              "127.0.0.1:1812 --secret-file vpn.secret --json"),
    "validator aws-keys": ("foblab validator aws-keys create --dir lab",),
    "validator aws-keys create": ("foblab validator aws-keys create --dir lab",
                                  "foblab validator aws-keys create --dir lab --user alice"),
    "validator aws-keys list": ("foblab validator aws-keys list --dir lab",),
    "validator aws-keys delete": ("foblab validator aws-keys delete AKIA... --dir lab",),
    "validator aws-keys sessions": ("foblab validator aws-keys sessions --dir lab",
                                    "foblab validator aws-keys sessions --dir lab --revoke "
                                    "ASIA..."),
    "scenario": ("foblab scenario run scenarios/*.toml", "foblab scenario study"),
    "scenario run": ("foblab scenario run scenarios/*.toml -q --junit out.xml",
                     "foblab scenario run scenarios/replay-attempt.toml --live --url "
                     "http://127.0.0.1:8700 --key-file lab/admin.key --token qa-blank"),
    "scenario study": ("foblab scenario study --plot study.png",
                       "foblab scenario study --tokens 200 --ppm-sd 10 --json"),
}


def _epilog(examples: tuple[str, ...]) -> str:
    # "\b" keeps click from rewrapping the lines
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in examples)


class Group(click.Group):
    """A group whose command list shows each command's first line of help whole."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            text = cmd.short_help or (cmd.help or "").strip().split("\n\n")[0]
            rows.append((name, " ".join(text.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def decorate(cmd: click.Command, path: str) -> None:
    """Attach the examples of `path` (and below) to `cmd`, and whole first lines to its
    groups' command lists. Lazily loaded subcommands are decorated as they load."""
    from tools._vocab import accept_old

    accept_old(cmd, path)
    examples = EXAMPLES.get(path)
    if examples and not cmd.epilog:
        cmd.epilog = _epilog(examples)
    if isinstance(cmd, click.Group):
        if type(cmd) is click.Group:  # a plain @click.group(): same object, better listing
            cmd.__class__ = Group
        cmd.foblab_path = path  # type: ignore[attr-defined]  # where LazyGroup._load looks
        for name, sub in cmd.commands.items():
            decorate(sub, f"{path} {name}".strip())
