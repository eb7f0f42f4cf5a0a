"""Drift, resync and lockout expiry without sleeping: the lab's time machine."""

import pytest
from starlette.testclient import TestClient

from mfa_app.web import create_app

pytestmark = pytest.mark.foblab(time_machine=True)


def test_a_year_of_drift_then_resync(foblab_validator, foblab_token, foblab_clock):
    fob = foblab_token(drift_ppm=40)
    user = foblab_validator.new_user()
    foblab_validator.enroll(user, fob)
    foblab_clock.advance("365d")              # the crystal gains 21 minutes
    assert not foblab_validator.verify(user, fob.next_code()).accepted
    first = fob.code()
    foblab_validator.resync(user, fob.serial, first, fob.next_code())
    assert foblab_validator.verify(user, fob.next_code()).accepted


def test_the_lock_lifts_when_its_time_has_passed(foblab_validator, foblab_token,
                                                 foblab_clock):
    fob = foblab_token()
    user = foblab_validator.new_user()
    foblab_validator.enroll(user, fob)
    with TestClient(create_app(foblab_validator.url, foblab_validator.verifier_key)) as app:
        for _ in range(12):
            app.post("/", data={"user": user, "code": "000000"})
        locked = app.post("/", data={"user": user, "code": fob.next_code()})
        assert locked.status_code == 401 and "locked" in locked.text
        foblab_clock.advance("2h")
        assert app.post("/", data={"user": user, "code": fob.next_code()}).status_code == 200
