"""multiprocessing used properly with each start method: the forkserver and the resource
tracker it starts live as long as pytest, and multiprocessing waits for its own children."""

import multiprocessing

import pytest

METHODS = ["fork", "spawn", "forkserver"]


@pytest.mark.parametrize("method", METHODS)
def test_pool(method):
    pool = multiprocessing.get_context(method).Pool(2)
    try:
        assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]
    finally:
        pool.close()
        pool.join()


@pytest.mark.parametrize("method", METHODS)
def test_process(method):
    process = multiprocessing.get_context(method).Process(target=abs, args=(-1,))
    process.start()
    process.join()
    assert process.exitcode == 0


@pytest.mark.parametrize("method", METHODS)
def test_pool_again(method):
    # The forkserver started by an earlier test is still multiprocessing's: it checks on it
    # (waitpid) before it forks from it again.
    with multiprocessing.get_context(method).Pool(1) as pool:
        assert pool.apply(abs, (-4,)) == 4
