"""The public API: `import jaxlm` gives the main names lazily and changes nothing in the process."""
import os
import subprocess
import sys
import textwrap

import jaxlm


def test_import_jaxlm_imports_no_jax_and_leaves_malloc_alone():
    code = textwrap.dedent("""
        import sys
        import jaxlm
        from jaxlm import host_memory
        assert not any(m == "jax" or m.startswith(("jax.", "flax")) for m in sys.modules), \\
            sorted(m for m in sys.modules if m.startswith(("jax", "flax")))
        assert not host_memory.applied()
        cfg = jaxlm.ModelConfig(vocab_size=16)  # a config name: still no JAX
        assert "jax" not in sys.modules
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "JAXLM_HOST_MALLOC"}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "JAX_PLATFORMS": "cpu"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_every_public_name_resolves_to_its_home():
    from jaxlm.config import ModelConfig
    from jaxlm.models import build_model
    from jaxlm.models.attention import register_attention
    missing = []
    for name in jaxlm.__all__:
        try:
            getattr(jaxlm, name)
        except AttributeError as e:
            missing.append(str(e))
    assert not missing, missing
    assert jaxlm.ModelConfig is ModelConfig and jaxlm.build_model is build_model
    assert jaxlm.register_attention is register_attention
    from jaxlm.evaluation import evaluate_run
    assert jaxlm.evaluate is evaluate_run
    assert set(jaxlm.__all__) <= set(dir(jaxlm))


def test_generate_is_the_function_whatever_was_imported_first():
    import jaxlm.generate  # noqa: F401 - binds the submodule of the same name to the package
    from jaxlm.generate import generate
    assert jaxlm.generate is generate and callable(jaxlm.generate)
    from jaxlm import generate as g
    assert g is generate


def test_ships_py_typed():
    assert os.path.isfile(os.path.join(os.path.dirname(jaxlm.__file__), "py.typed"))
