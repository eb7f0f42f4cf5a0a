"""An application with a second factor: a login page, an AWS MFA helper, a serial reader."""
