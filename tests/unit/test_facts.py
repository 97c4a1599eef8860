"""facts.py's sensor cursor: what epn_sensor keeps between ticks survives garbage."""

from assyncy_dagster.facts import SensorCursor


def test_cursor_survives_garbage():
    assert SensorCursor.parse("not json") == SensorCursor()
    cursor = SensorCursor(refreshed_at=5.0, failures=2, retry_at=7.0)
    assert SensorCursor.parse(cursor.dumps()) == cursor
