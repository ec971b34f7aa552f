"""The foundation both programs share: settings from environment and flags, logging, and the names
of the contract between the service, the operator, the chart and the alert rules."""
