"""The warm worker through the Slicer module's own path (ExplainRun over a real MRML scene):
a second question about the same CT runs no inference and gives the map a fresh process
gives; Cancel stops a question and the worker lives on; a worker that does not stop is
killed as a tree and replaced; a worker left alone ends by itself."""

import os
import signal
import time

import numpy as np
import pytest
import slicer
from mrml.test_slicer_logic import leftover_work_dirs, node_ids

from mrml_scene import finish, new_scene, phantom_volume, segment_from_labels
from SegHiResGradCAMLib.mrml import background
from SegHiResGradCAMLib.mrml.background import WarmWorker, _group_alive
from SegHiResGradCAMLib.mrml.slicer_logic import ExplainRun, ExplainSettings

KEPT = "inference kept from the previous run"


def wait_for_progress(run, fraction: float, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while run.poll().fraction < fraction:
        assert run.poll().state == "running" and time.time() < deadline
        time.sleep(0.05)


@pytest.fixture
def worker():
    worker = WarmWorker()
    yield worker
    worker.release()


@pytest.mark.slow
def test_questions_about_one_ct_reuse_its_inference_and_give_the_fresh_process_s_maps(worker):
    scene = new_scene()
    volume, case = phantom_volume(scene)
    tumour, tumour_id = segment_from_labels(scene, volume, case.labels, 2, "tumour")

    first = ExplainRun(ExplainSettings(volume, "kidney"), worker=worker)
    assert finish(first).state == "finished" and KEPT not in first.log
    pid = worker.pid
    assert worker.loaded == first.card.name

    # Another segment and class, then another method: no inference, same worker.
    settings = ExplainSettings(volume, "tumour", segmentation_node=tumour, segment_id=tumour_id)
    second = ExplainRun(settings, worker=worker)
    assert finish(second).state == "finished" and KEPT in second.log
    third = ExplainRun(ExplainSettings(volume, "kidney", method="seg-grad-cam"), worker=worker)
    assert finish(third).state == "finished" and KEPT in third.log
    assert worker.pid == pid

    cold = ExplainRun(settings)  # a process of its own, as without the worker
    assert finish(cold).state == "finished"
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(second.heatmap_node), slicer.util.arrayFromVolume(cold.heatmap_node)
    )
    assert second.heatmap_node.GetAttribute("SegHiResGradCAM.TargetScore") == cold.heatmap_node.GetAttribute(
        "SegHiResGradCAM.TargetScore"
    )

    # Cancel part-way through a long question: nothing is left, the worker lives on.
    nodes = node_ids(scene)
    long = ExplainRun(ExplainSettings(volume, "kidney", with_metrics=True), worker=worker)
    wait_for_progress(long, 0.3)
    long.cancel()
    assert long.poll().state == "cancelled" and node_ids(scene) == nodes and not leftover_work_dirs()
    assert worker.pid == pid
    again = ExplainRun(ExplainSettings(volume, "kidney", method="seg-layer-cam"), worker=worker)
    assert finish(again).state == "finished" and KEPT in again.log

    # The CT node changed: computed again.
    array = slicer.util.arrayFromVolume(volume)
    array[:, :5] = -1000
    slicer.util.arrayFromVolumeModified(volume)
    changed = ExplainRun(ExplainSettings(volume, "kidney"), worker=worker)
    assert finish(changed).state == "finished" and KEPT not in changed.log


@pytest.mark.slow
def test_a_worker_that_does_not_stop_is_killed_and_the_next_question_starts_another(worker, monkeypatch):
    monkeypatch.setattr(background, "CANCEL_GRACE_SECONDS", 1.0)  # the grace is waited in full here
    scene = new_scene()
    volume, _ = phantom_volume(scene)
    nodes = node_ids(scene)
    run = ExplainRun(ExplainSettings(volume, "kidney"), worker=worker)
    wait_for_progress(run, 0.05)
    stuck = worker.pid
    os.kill(stuck, signal.SIGSTOP)  # it reads no cancellation and answers nothing
    started = time.monotonic()
    run.cancel()
    assert time.monotonic() - started < 20
    assert run.poll().state == "cancelled" and not _group_alive(stuck)
    assert node_ids(scene) == nodes and not leftover_work_dirs() and not worker.alive

    # A worker that dies in a question (out of memory, killed) fails that question, with a message.
    dying = ExplainRun(ExplainSettings(volume, "kidney"), worker=worker)
    wait_for_progress(dying, 0.05)
    os.kill(worker.pid, signal.SIGKILL)
    status = finish(dying)
    assert status.state == "failed" and status.message
    assert node_ids(scene) == nodes and not leftover_work_dirs()

    after = ExplainRun(ExplainSettings(volume, "kidney"), worker=worker)
    assert finish(after).state == "finished" and worker.pid not in (None, stuck)


def test_a_worker_left_alone_ends_and_a_released_one_is_gone(tmp_path):
    idle = WarmWorker(idle_seconds=1)
    refused = idle.submit(["inspect", "--model", str(tmp_path / "missing.json")], tmp_path)
    status = refused.wait(120)
    assert status.state == "failed" and "missing.json" in status.message
    pid = idle.pid
    deadline = time.time() + 30
    while idle.alive:
        assert time.time() < deadline, "the idle worker did not end"
        time.sleep(0.1)
    assert not _group_alive(pid)

    kept = WarmWorker()
    assert kept.submit(["methods"], tmp_path).wait(120).state == "finished"
    pid = kept.pid
    kept.release()
    assert not kept.alive and not _group_alive(pid)
