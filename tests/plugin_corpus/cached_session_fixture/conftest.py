"""A server started once per session, and execnet's pattern: gateways started lazily by a
function-scoped fixture and cached in a session-scoped group."""

import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def server():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    yield child
    child.kill()
    child.wait()


class Group:
    def __init__(self):
        self.gateways = {}

    def terminate(self):
        for gateway in self.gateways.values():
            gateway.kill()
            gateway.wait()


@pytest.fixture(scope="session")
def group():
    g = Group()
    yield g
    g.terminate()


@pytest.fixture(params=["popen", "other"])
def gw(request, group):
    try:
        return group.gateways[request.param]
    except KeyError:
        gateway = subprocess.Popen(["sleep", "300"])
        group.gateways[request.param] = gateway
        return gateway
