"""The model registry: names, import paths, and the errors for anything else."""

import pytest

from atomate2_otf.models.base import check_model_name, is_import_path, load_model


def test_import_path_builds_the_model_in_any_process_and_keeps_it_in_the_spec():
    model = load_model("tests.toy_model:ToyModel")
    assert model.spec() == {"name": "tests.toy_model:ToyModel"}
    # a checkpoint's spec rebuilds the same model by the same path
    again = load_model(**model.spec())
    assert type(again) is type(model)


@pytest.mark.parametrize("name", ["nope", "a:b:c", "not a path:x", "", 3, "mod:"])
def test_unknown_names_list_what_is_accepted(name):
    with pytest.raises(ValueError, match="registered models are: .*chgnet.*import path"):
        check_model_name(name)


def test_import_path_to_a_missing_factory_names_it():
    assert is_import_path("tests.toy_model:NoSuchFactory")
    with pytest.raises(ValueError, match="has no 'NoSuchFactory'"):
        load_model("tests.toy_model:NoSuchFactory")


def test_every_builtin_name_resolves_to_a_loader_or_names_its_extra():
    """Built-in names import their family's module lazily; a missing family names the pip
    extra (and, for MACE, that it needs an environment of its own)."""
    import importlib

    from atomate2_otf.models.base import _BUILTIN, _EXTRA_OF_MODULE

    for name, (target, _) in _BUILTIN.items():
        module_name, factory_name = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            extra = _EXTRA_OF_MODULE[module_name]
            with pytest.raises(ImportError, match=rf"atomate2-otf\[{extra}\]"):
                load_model(name)
            continue
        assert callable(getattr(module, factory_name)), name
