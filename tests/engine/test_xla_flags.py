"""engine/xla_flags.py: the flags are added once and a user's own setting wins."""
from engine.xla_flags import FLAGS, apply_xla_flags


def test_adds_the_flags_to_an_empty_environment():
  env = {}
  assert apply_xla_flags(env).split() == list(FLAGS)


def test_keeps_other_flags_and_the_users_own_value():
  name = FLAGS[0].split("=", 1)[0]
  env = {"XLA_FLAGS": f"--xla_dump_to=/tmp/x {name}=ALWAYS_UPDATE"}
  assert apply_xla_flags(env) == f"--xla_dump_to=/tmp/x {name}=ALWAYS_UPDATE"
  assert apply_xla_flags(env) == env["XLA_FLAGS"]       # idempotent


def test_is_idempotent():
  env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  once = apply_xla_flags(env)
  assert apply_xla_flags(env) == once == "--xla_dump_to=/tmp/x " + " ".join(FLAGS)
