"""Reliability proof suite: each guarantee of DESIGN.md section 2 under the fault it is about."""
