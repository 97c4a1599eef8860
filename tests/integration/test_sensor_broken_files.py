"""A config.yml or ignore.yml an admin broke while the daemon runs: epn_sensor's tick skips,
its reason naming the file and the problem, instead of erroring (issue 18)."""

import dagster as dg

from assyncy_dagster.definitions import build_definitions, build_resources


def _tick_after_breaking(stack, path, text: str) -> dg.SensorResult | dg.SkipReason:
    """Evaluate epn_sensor as the running daemon does: its definitions loaded while config.yml
    was good, `path` overwritten with `text` since."""
    sensor = build_definitions(str(stack.config_path)).get_sensor_def("epn_sensor")
    path.write_text(text)
    with dg.build_sensor_context(instance=stack.instance, resources=build_resources()) as context:
        return sensor(context)


def test_a_corrupt_ignore_yml_skips_the_tick_naming_it(stack):
    stack.lay_out("12282a")
    ignore = stack.settings().ignore
    result = _tick_after_breaking(stack, ignore, "repatriated: [12282a\n")  # an unclosed list
    assert isinstance(result, dg.SkipReason), result
    assert str(ignore) in result.skip_message and "repair or restore it by hand" in result.skip_message


def test_an_invalid_config_yml_skips_the_tick_naming_it(stack):
    text = stack.config_path.read_text().replace("max-tasks: 2", "max-tasks: many")
    assert text != stack.config_path.read_text()
    result = _tick_after_breaking(stack, stack.config_path, text)
    assert isinstance(result, dg.SkipReason), result
    assert str(stack.config_path) in result.skip_message and "max-tasks" in result.skip_message
