def test_server_still_runs(server):
    assert server.poll() is None


def test_gateway_in_another_module(gw, server):
    assert gw.poll() is None and server.poll() is None
