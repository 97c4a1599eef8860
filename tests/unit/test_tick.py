"""tick.py's pure rule: how due EPNs are shared out over batch runs."""

from assyncy_dagster.tick import plan_batches


def test_batches_give_every_rsync_slot_work_and_stay_bounded():
    epns = [f"{12000 + i}a" for i in range(7)]
    assert plan_batches(epns, max_tasks=2, per_run=20) == [epns[:4], epns[4:]]
    assert plan_batches(epns, max_tasks=2, per_run=3) == [epns[:3], epns[3:6], epns[6:]]
    assert plan_batches(epns[:1], max_tasks=4, per_run=20) == [epns[:1]]
    assert plan_batches([], max_tasks=2, per_run=20) == []
