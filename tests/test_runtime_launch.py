"""Rank discovery, the rank-0 rendezvous and the local spawner (no GPU needed)."""

import sys
import threading
import time

import pytest

from ftbench.errors import InvalidInputError
from ftbench.runtime.launch import (
    RankFailedError,
    RankInfo,
    discover,
    exchange_via_file,
    main,
    run_id,
    share_from_rank0,
    spawn,
)
from ftbench.runtime.parallel import CollectiveTimeoutError


def test_no_launcher_means_one_rank():
    assert discover({"PATH": "/bin"}) == RankInfo(0, 1, 0, "single")


def test_ftbench_spawner_variables():
    env = {"FTBENCH_RANK": "2", "FTBENCH_WORLD_SIZE": "4", "FTBENCH_LOCAL_RANK": "2"}
    assert discover(env) == RankInfo(2, 4, 2, "ftbench")


def test_openmpi_variables():
    env = {
        "OMPI_COMM_WORLD_RANK": "5",
        "OMPI_COMM_WORLD_SIZE": "8",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    }
    assert discover(env) == RankInfo(5, 8, 1, "mpi")


def test_mpich_variables():
    assert discover({"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "3"}) == RankInfo(
        3, 4, 3, "mpi"
    )


def test_slurm_step_variables():
    env = {"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0"}
    assert discover(env) == RankInfo(9, 16, 1, "slurm")


def test_a_slurm_batch_script_outside_srun_is_one_rank():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "7"}
    assert discover(env) == RankInfo(0, 1, 0, "single")


def test_mpirun_inside_a_slurm_allocation_is_mpi():
    env = {
        "OMPI_COMM_WORLD_RANK": "1",
        "OMPI_COMM_WORLD_SIZE": "2",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_STEP_ID": "0",
    }
    assert discover(env) == RankInfo(1, 2, 1, "mpi")


def test_missing_local_rank_defaults_to_the_rank():
    assert discover({"PMI_RANK": "1", "PMI_SIZE": "2"}).local_rank == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FTBENCH_RANK": "4", "FTBENCH_WORLD_SIZE": "4"}, "rank 4 of 4"),
        ({"FTBENCH_RANK": "x", "FTBENCH_WORLD_SIZE": "4"}, "FTBENCH_RANK='x'"),
        ({"FTBENCH_RANK": "0"}, "FTBENCH_WORLD_SIZE is not"),
        ({"PMI_RANK": "0", "PMI_SIZE": "0"}, "rank 0 of 0"),
    ],
)
def test_inconsistent_environments_are_refused(env, message):
    with pytest.raises(InvalidInputError, match=message):
        discover(env)


def test_run_id_comes_from_ftbench_then_slurm():
    assert run_id({"FTBENCH_RUN_ID": "abc", "SLURM_JOB_ID": "7"}) == "abc"
    assert run_id({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "2"}) == "slurm-7.2"
    with pytest.raises(InvalidInputError, match="FTBENCH_RUN_ID"):
        run_id({})


def test_file_rendezvous_hands_rank0_value_to_the_others(tmp_path):
    made = []
    received = {}

    def rank(index):
        info = RankInfo(index, 3, index, "ftbench")
        received[index] = exchange_via_file(
            info, lambda: made.append(1) or [1, -2, 3], tmp_path, "id", 10.0
        )

    threads = [threading.Thread(target=rank, args=(index,)) for index in (2, 1)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # the others wait for the file
    rank(0)
    for thread in threads:
        thread.join()
    assert received == {0: [1, -2, 3], 1: [1, -2, 3], 2: [1, -2, 3]} and made == [1]


def test_file_rendezvous_times_out_without_rank0(tmp_path):
    start = time.monotonic()
    with pytest.raises(CollectiveTimeoutError, match="rank 1 waited 0.2 s"):
        exchange_via_file(RankInfo(1, 2, 1, "slurm"), list, tmp_path, "id", 0.2)
    assert time.monotonic() - start < 2


def test_a_process_without_launcher_needs_no_exchange():
    assert share_from_rank0(RankInfo(0, 1, 0, "single"), lambda: 42, env={}) == 42


def test_several_ranks_without_mpi_need_a_rendezvous_directory():
    with pytest.raises(InvalidInputError, match="FTBENCH_RENDEZVOUS"):
        share_from_rank0(RankInfo(0, 2, 0, "slurm"), lambda: 42, env={})


def _python(code):
    return [sys.executable, "-c", code]


def test_spawn_gives_every_rank_its_variables(tmp_path):
    code = (
        "import os, pathlib; e = os.environ; "
        f"pathlib.Path(r'{tmp_path}', e['FTBENCH_RANK']).write_text("
        "','.join([e['FTBENCH_WORLD_SIZE'], e['FTBENCH_LOCAL_RANK'], e['FTBENCH_RUN_ID'], "
        "str(os.path.isdir(e['FTBENCH_RENDEZVOUS']))]))"
    )
    spawn(3, _python(code))
    rows = [(tmp_path / str(rank)).read_text().split(",") for rank in range(3)]
    assert [row[:2] for row in rows] == [["3", "0"], ["3", "1"], ["3", "2"]]
    assert len({row[2] for row in rows}) == 1 and all(row[3] == "True" for row in rows)


def test_one_failing_rank_stops_the_others_at_once():
    code = (
        "import os, sys, time\nif os.environ['FTBENCH_RANK'] == '1': sys.exit(3)\ntime.sleep(60)\n"
    )
    start = time.monotonic()
    with pytest.raises(RankFailedError, match=r"rank 1 of 3 failed \(exit code 3\); stopped"):
        spawn(3, _python(code))
    assert time.monotonic() - start < 15


def test_launch_main_explains_its_usage(capsys):
    assert main(["nonsense"]) == 2
    assert "usage" in capsys.readouterr().err


def test_a_rank_watches_the_live_ranks_of_its_host_only():
    from ftbench.runtime.launch import Peer, neighbours

    peers = [Peer("a", 10), Peer("a", 11), Peer("b", 12), Peer("a", 13)]
    alive = {10, 11, 12}.__contains__  # 13: another process namespace, say
    assert neighbours(peers, 0, alive) == [1]
    assert neighbours(peers, 2, alive) == []


def test_peer_watch_reports_a_dead_neighbour_after_its_grace():
    import threading

    from ftbench.runtime.launch import Peer, PeerWatch

    living = {10, 11}
    said, done = [], threading.Event()
    watch = PeerWatch([Peer("a", 10), Peer("a", 11)], 0, interval_s=0.01, grace_s=0.05,
                      alive=lambda pid: pid in living,
                      on_dead=lambda message: (said.append(message), done.set()))  # fmt: skip
    watch.start()
    living.discard(11)
    assert done.wait(5.0)
    assert said == [
        "ftbench: rank 0 of 2 stopped: rank 1 (pid 11) on this host exited while the run went "
        "on; the group cannot finish"
    ]


def test_peer_watch_stopped_within_the_grace_says_nothing():
    import time

    from ftbench.runtime.launch import Peer, PeerWatch

    living, said = {10, 11}, []
    watch = PeerWatch([Peer("a", 10), Peer("a", 11)], 1, interval_s=0.01, grace_s=0.5,
                      alive=lambda pid: pid in living, on_dead=said.append)  # fmt: skip
    watch.start()
    living.discard(10)  # a peer that passed the last barrier and exited first
    time.sleep(0.1)
    watch.stop()
    time.sleep(0.6)
    assert said == []
