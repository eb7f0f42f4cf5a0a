"""foblab as a library: emulated hardware OTP tokens and a real validator daemon, for the
tests of an application's own MFA flow.

    import foblab

    with foblab.lab() as lab:
        tok = lab.token()                       # an emulated key fob (TOTP, QA mode)
        lab.validator.enroll("alice", tok)      # its seed registered, enabled with 2 codes
        assert lab.validator.verify("alice", tok.next_code()).accepted

In pytest the same pieces are fixtures (`foblab_token`, `foblab_validator`, `foblab_aws`,
`foblab_radius`, `foblab_lab`, `foblab_clock`), registered by the `foblab` plugin when
foblab is installed. See docs/testing.md.
"""

from foblab._clock import LabClock
from foblab._lab import Lab, lab
from foblab._token import LabToken
from foblab._validator import AwsKeys, LabError, LabValidator, RadiusServer, Verification

__all__ = ["AwsKeys", "Lab", "LabClock", "LabError", "LabToken", "LabValidator",
           "RadiusServer", "Verification", "lab"]
