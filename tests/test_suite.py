import pytest

from ckd.benchmarking.suite import method_configs, suite_ray_address


def test_shared_settings_go_to_the_methods_that_have_them():
    configs = method_configs(stream="split-digits", methods=["naive", "kd-replay"], seeds=[0, 1],
                             settings={"mem_size": 80, "temperature": 4.0}, epochs=1)
    assert [(c.method, c.seed) for c in configs] == [("naive", 0), ("naive", 1), ("kd-replay", 0), ("kd-replay", 1)]
    assert configs[0].method_args == {}
    assert configs[2].method_args == {"mem_size": 80, "temperature": 4.0}
    assert all(c.epochs == 1 for c in configs)


def test_a_setting_no_method_has_is_an_error():
    with pytest.raises(ValueError, match=r"no method among \['naive', 'replay'\] has the setting\(s\) \['temperature'\]"):
        method_configs(stream="split-digits", methods=["naive", "replay"], seeds=[0], settings={"temperature": 2.0})
    with pytest.raises(ValueError, match="method 'naive' has no setting 'mem_size'"):
        method_configs(stream="split-digits", methods=["naive"], seeds=[0], settings={"mem_size": 80})


@pytest.mark.parametrize("table, address", [("", None), ("ray = false", None), ("ray = true", "local"),
                                            ('ray = "auto"', "auto"), ('ray = "ray://head:10001"', "ray://head:10001")])
def test_suite_ray_address(tmp_path, table, address):
    (tmp_path / "s.toml").write_text(f"[suite]\n{table}\n")
    assert suite_ray_address(tmp_path / "s.toml") == address


def test_suite_ray_address_rejects_a_number(tmp_path):
    (tmp_path / "s.toml").write_text("[suite]\nray = 2\n")
    with pytest.raises(ValueError, match=r'\[suite\] ray must be true, false or an address such as "auto", got 2'):
        suite_ray_address(tmp_path / "s.toml")
