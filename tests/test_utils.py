"""The commands' shared helpers: the huge-page re-run of the CLIs."""

import os
import platform
import subprocess
import sys

from rcnn_jax.core import utils

THP = 'always [madvise] never\n'


def test_hugepage_env_adds_the_tunable_once():
  env = utils.hugepage_env({'PATH': '/bin'}, THP, 'glibc')
  assert env['GLIBC_TUNABLES'] == utils.HUGEPAGE_TUNABLE and env['PATH'] == '/bin'
  # The re-run process does not re-run again.
  assert utils.hugepage_env(env, THP, 'glibc') is None


def test_hugepage_env_keeps_other_tunables_and_user_choices():
  env = utils.hugepage_env({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, THP, 'glibc')
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:' + utils.HUGEPAGE_TUNABLE
  assert utils.hugepage_env({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, THP, 'glibc') is None
  assert utils.hugepage_env({'RCNN_JAX_HUGEPAGES': '0'}, THP, 'glibc') is None
  assert utils.hugepage_env({}, 'always madvise [never]\n', 'glibc') is None
  assert utils.hugepage_env({}, None, 'glibc') is None
  assert utils.hugepage_env({}, THP, 'musl') is None


def test_cli_reruns_with_the_tunable_and_its_arguments():
  """A command run through utils.run sees the tunable and the same arguments after the re-run."""
  code = ('import os, sys\nfrom rcnn_jax.core import utils\n'
          'def main(argv):\n'
          '  print(os.environ.get("GLIBC_TUNABLES"), argv[1:])\n'
          'utils.run(main)\n')
  env = {k: v for k, v in os.environ.items()
         if k not in ('GLIBC_TUNABLES', 'RCNN_JAX_HUGEPAGES')}
  out = subprocess.run([sys.executable, '-c', code, 'a', 'b c'], env=env, capture_output=True,
                       text=True, check=True).stdout.split(None, 1)
  expected = utils.hugepage_env(env, utils.thp_mode(), platform.libc_ver()[0])
  assert out[0] == (expected['GLIBC_TUNABLES'] if expected else 'None')
  assert out[1].strip() == "['a', 'b c']"

