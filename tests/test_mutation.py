"""`make mutants` (tests/mutation.py): each module runs against tests that exist, under a configuration
mutmut can read, and the summary's share is that of the mutants not killed. No mutant runs here."""
import tomllib
from make_dry_run import make_commands
from mutation import COVERING, ROOT, configuration, table

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_module_and_its_covering_tests_exist():
    for module, tests in COVERING.items():
        assert (ROOT / module).is_file(), module
        for test in tests:
            assert (ROOT / test.split("::")[0]).is_file(), (module, test)


def test_each_run_mutates_its_module_only_against_its_tests_with_the_shared_settings():
    for module, tests in COVERING.items():
        own = tomllib.loads(configuration(module))["tool"]
        assert own["mutmut"] == {**PYPROJECT["tool"]["mutmut"], "only_mutate": [module],
                                 "pytest_add_cli_args_test_selection": tests}
        assert module.split("/")[0] in own["mutmut"]["source_paths"]  # copied where its tests import it
        assert own["pytest"] == PYPROJECT["tool"]["pytest"]  # its tests run as make unit runs them


def test_make_mutants_runs_every_module_or_those_named(monkeypatch):
    def modules():
        [run] = [c for c in make_commands("mutants") if "tests/mutation.py" in c]
        return run[run.index("tests/mutation.py") + 1:]

    monkeypatch.delenv("MODULES", raising=False)
    assert modules() == []  # none named: every module of COVERING
    monkeypatch.setenv("MODULES", "gemmate_lib/stats.py gemmate_lib/preflight.py")
    assert modules() == ["gemmate_lib/stats.py", "gemmate_lib/preflight.py"]


def test_the_summary_counts_survivors_untested_and_unchecked_mutants_as_not_killed():
    """A mutant left unchecked (its function changed since the run it was counted in) is not a killed one."""
    row = {"module": "gemmate_lib/stats.py", "mutants": 200, "killed": 166, "survived": 12, "no tests": 8,
           "not checked": 4, "timeout": 6, "suspicious": 4, "seconds": 95.0}
    header, line = table([row]).splitlines()
    assert header.split()[-3:] == ["not", "killed", "time"]
    assert line.split() == ["gemmate_lib/stats.py", "200", "166", "12", "8", "4", "6", "4", "12.0%", "1",
                            "min", "35", "s"]
