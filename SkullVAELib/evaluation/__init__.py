"""Metrics, the paper's Table 1, the implant protocol, reports and figures."""
