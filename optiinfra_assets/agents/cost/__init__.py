"""The cost agent: spot migration today; right-sizing, reserved capacity, cost anomalies and budget
forecasts plug in here as one module each."""

AGENT = "cost"
