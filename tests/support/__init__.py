"""Test support: run real gateways and replicas on 127.0.0.1 and talk to them."""
