"""The web app's login page against a real foblab validator and an emulated key fob."""

from starlette.testclient import TestClient

from mfa_app.web import create_app


def _login(app, user, code):
    return app.post("/", data={"user": user, "code": code})


def test_login_needs_the_code_on_the_token(foblab_validator, foblab_token):
    fob = foblab_token()                      # a key fob, TOTP, SHA-1, 6 digits
    user = foblab_validator.new_user("alice")
    foblab_validator.enroll(user, fob)        # its seed file imported, two codes typed
    with TestClient(create_app(foblab_validator.url, foblab_validator.verifier_key)) as app:
        assert _login(app, user, "").status_code == 401          # no code: refused
        code = fob.next_code()
        answer = _login(app, user, code)
        assert answer.status_code == 200 and answer.text == f"welcome {user}"
        replay = _login(app, user, code)                         # the same code again
        assert replay.status_code == 401 and "replayed" in replay.text


def test_a_wrong_code_and_an_unknown_user_read_the_same(foblab_validator, foblab_token):
    fob = foblab_token("card-8", hash="sha256")
    user = foblab_validator.new_user("bob")
    foblab_validator.enroll(user, fob)
    with TestClient(create_app(foblab_validator.url, foblab_validator.verifier_key)) as app:
        assert _login(app, user, "12345678").status_code == 401
        assert _login(app, "nobody", "12345678").status_code == 401
