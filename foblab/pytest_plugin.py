"""foblab's pytest plugin, registered through the `pytest11` entry point: installing foblab
is all it takes. Fixtures:

- `foblab_lab` (module): the lab the other fixtures share (one daemon per test module, and
  per pytest-xdist worker); `@pytest.mark.foblab(time_machine=True)` on the module
  (`pytestmark = pytest.mark.foblab(time_machine=True)`) gives it a clock tests can move.
- `foblab_validator` (module): the real validator daemon on a free loopback port: `url`,
  `admin_key`, `verifier_key`, `client`, `enroll(user, token)`, `verify(user, code)`,
  `new_user()`.
- `foblab_token` (function): a factory of emulated tokens, closed after the test.
- `foblab_aws` (function): a fresh AWS access key pair and the endpoint URL.
- `foblab_radius` (module): the daemon's RADIUS door: `host`, `port`, `address`, `secret`.
- `foblab_clock` (module): the lab's time machine (only with the marker above).

Nothing heavy is imported until a fixture is used, so the plugin costs other test suites
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from foblab import AwsKeys, Lab, LabClock, LabToken, LabValidator, RadiusServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "foblab(time_machine=False): settings of the module's foblab lab")


@pytest.fixture(scope="module")
def foblab_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    import foblab

    marker = request.node.get_closest_marker("foblab")
    time_machine = bool(marker.kwargs.get("time_machine", False)) if marker else False
    with foblab.lab(time_machine=time_machine) as lab:
        yield lab


@pytest.fixture(scope="module")
def foblab_validator(foblab_lab: Lab) -> LabValidator:
    return foblab_lab.validator


@pytest.fixture
def foblab_token(foblab_lab: Lab) -> Iterator[Callable[..., LabToken]]:
    made: list[LabToken] = []

    def factory(model: str = "keyfob", **options: Any) -> LabToken:
        tok = foblab_lab.token(model, **options)
        made.append(tok)
        return tok

    yield factory
    for tok in made:
        tok.close()


@pytest.fixture
def foblab_aws(foblab_lab: Lab) -> AwsKeys:
    return foblab_lab.aws_keys()


@pytest.fixture(scope="module")
def foblab_radius(foblab_validator: LabValidator) -> RadiusServer:
    return foblab_validator.radius()


@pytest.fixture(scope="module")
def foblab_clock(foblab_lab: Lab) -> LabClock:
    return foblab_lab.clock
