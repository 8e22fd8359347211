def test_server_runs(server):
    assert server.poll() is None


def test_gateway_runs(gw):
    assert gw.poll() is None


def test_gateway_still_runs(gw):
    assert gw.poll() is None
