"""The emulated display token: OTP engine, drifting clock, firmware and serial-port runners."""
