"""A throwaway PostgreSQL server on loopback, for the tests and the bench (not for production):
``initdb`` into a new temporary folder (trust authentication, superuser ``rcnn``), ``pg_ctl
start`` on 127.0.0.1 and a free port, its unix socket in that folder; ``stop`` shuts it down
and removes the folder. The binaries are Debian's ``postgresql`` package (``apt-get install
postgresql``): ``initdb`` on PATH, else the newest ``/usr/lib/postgresql/*/bin``
(``find_bin_dir``). PostgreSQL refuses to run as root: as root the server runs as the
``postgres`` user (made by the Debian package), else ``nobody`` (``RCNN_JAX_PG_USER`` names
another); otherwise as the current user. Each ``start`` is its own cluster (own folder and
port), so parallel test workers never share one.

    server = pgserver.start()            # durable=False: fsync off (tests)
    url = server.create_database()       # postgresql://rcnn@127.0.0.1:PORT/rcnn_<hex>
    ...
    server.drop_database(url)            # optional: stop removes everything
    server.stop()

As a command (``python -m rcnn_jax.serving.alerts.pgserver [--durable]``): prints the URL of a
new database ``rcnn`` on its first line, serves until SIGTERM/SIGINT, then stops and removes
the cluster.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid

from rcnn_jax.core.errors import UserError

SUPERUSER = 'rcnn'
USER_ENV = 'RCNN_JAX_PG_USER'


def find_bin_dir() -> str | None:
  """The folder of ``initdb`` and ``pg_ctl``: PATH's, else the newest Debian
  ``/usr/lib/postgresql/<major>/bin``; None if neither has them."""
  found = shutil.which('initdb')
  if found and os.path.exists(os.path.join(os.path.dirname(os.path.realpath(found)), 'pg_ctl')):
    return os.path.dirname(os.path.realpath(found))
  dirs = glob.glob('/usr/lib/postgresql/*/bin')
  dirs = [d for d in dirs if all(os.access(os.path.join(d, b), os.X_OK)
                                 for b in ('initdb', 'pg_ctl', 'postgres'))]
  dirs.sort(key=lambda d: [int(x) for x in re.findall(r'\d+', d.split('/')[-2])])
  return dirs[-1] if dirs else None


def _run_as():
  """(uid, gid, name) the server runs as, or None for the current user (not root)."""
  if os.geteuid() != 0:
    return None
  names = [os.environ[USER_ENV]] if os.environ.get(USER_ENV) else ['postgres', 'nobody']
  for name in names:
    try:
      p = pwd.getpwnam(name)
    except KeyError:
      continue
    return p.pw_uid, p.pw_gid, name
  raise UserError(f'running as root, PostgreSQL needs an unprivileged user: none of '
                  f'{", ".join(names)} exists (set {USER_ENV})')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _traversable(path) -> bool:
  """Whether every folder above ``path`` lets other users through (x for others)."""
  path = os.path.realpath(path)
  while True:
    if not os.stat(path).st_mode & 0o001:
      return False
    parent = os.path.dirname(path)
    if parent == path:
      return True
    path = parent


@dataclasses.dataclass
class Server:
  """A running throwaway cluster (``start``)."""
  base: str  # the temporary folder: data/, the socket, server.log
  port: int
  bin_dir: str
  run_as: tuple | None
  host: str = '127.0.0.1'
  superuser: str = SUPERUSER

  @property
  def data(self) -> str:
    return os.path.join(self.base, 'data')

  def url(self, dbname='postgres') -> str:
    return f'postgresql://{self.superuser}@{self.host}:{self.port}/{dbname}'

  def create_database(self, name=None) -> str:
    """A new, empty database (``rcnn_<hex>`` unless named); returns its URL."""
    import psycopg  # lazy: the 'postgres' extra, only where a server is started
    name = name or f'rcnn_{uuid.uuid4().hex[:12]}'
    with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as con:
      con.execute(f'CREATE DATABASE "{name}"')
    return self.url(name)

  def drop_database(self, url_or_name):
    """Drops a database of this server (its connections closed first)."""
    import psycopg  # lazy: the 'postgres' extra, only where a server is started
    name = str(url_or_name).rsplit('/', 1)[-1].split('?')[0]
    with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as con:
      con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

  def _pg_ctl(self, *args, check=True):
    return _call([os.path.join(self.bin_dir, 'pg_ctl'), '-D', self.data, *args], self.run_as,
                 check=check)

  def stop(self):
    """Shuts the server down (fast: open connections are closed) and removes its folder."""
    if os.path.exists(os.path.join(self.data, 'postmaster.pid')):
      self._pg_ctl('-m', 'fast', '-w', '-t', '60', 'stop', check=False)
    shutil.rmtree(self.base, ignore_errors=True)


def _call(cmd, run_as, check=True):
  kw = {}
  if run_as is not None:
    kw = dict(user=run_as[0], group=run_as[1], extra_groups=[])
  env = dict(os.environ, LC_ALL='C', LANG='C')
  if run_as is not None:
    env['HOME'] = tempfile.gettempdir()
  r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd='/', **kw)
  if check and r.returncode != 0:
    raise RuntimeError(f'{" ".join(cmd)} failed (exit {r.returncode}):\n{r.stdout}{r.stderr}')
  return r


def start(durable=False, parent=None, tries=5) -> Server:
  """A new cluster, started and accepting connections on 127.0.0.1 (``Server``). ``durable``:
  PostgreSQL's defaults (fsync, synchronous commit); else fsync, synchronous_commit and
  full_page_writes off (a throwaway server: nothing outlives it). ``parent``: where its
  temporary folder goes (default: the system's; it must let the server's user through)."""
  bin_dir = find_bin_dir()
  if bin_dir is None:
    raise UserError('PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in '
                    '/usr/lib/postgresql/*/bin: apt-get install postgresql')
  run_as = _run_as()
  parent = parent or tempfile.gettempdir()
  if run_as is not None and not _traversable(parent):
    parent = '/tmp'
  base = tempfile.mkdtemp(prefix='rcnn_pg_', dir=parent)
  try:
    if run_as is not None:
      os.chown(base, run_as[0], run_as[1])
    _call([os.path.join(bin_dir, 'initdb'), '-D', os.path.join(base, 'data'), '-U', SUPERUSER,
           '--auth=trust', '-E', 'UTF8', '--locale=C', '--no-sync', '--no-instructions'], run_as)
    opts = ['-c listen_addresses=127.0.0.1', f'-c unix_socket_directories={base}',
            '-c shared_buffers=64MB', '-c max_connections=60']
    if not durable:
      opts += ['-c fsync=off', '-c synchronous_commit=off', '-c full_page_writes=off']
    for _ in range(tries):
      server = Server(base, _free_port(), bin_dir, run_as)
      r = server._pg_ctl('-l', os.path.join(base, 'server.log'), '-w', '-t', '60', '-o',
                         ' '.join([f'-p {server.port}'] + opts), 'start', check=False)
      if r.returncode == 0:
        return server
      with open(os.path.join(base, 'server.log'), errors='replace') as f:
        log = f.read()
      if 'could not bind' not in log and 'already in use' not in log:
        raise RuntimeError(f'pg_ctl start failed (exit {r.returncode}):\n{r.stdout}{r.stderr}'
                           f'\n{log[-3000:]}')
    raise RuntimeError(f'pg_ctl start: no free port in {tries} tries')
  except BaseException:
    shutil.rmtree(base, ignore_errors=True)
    raise


def main(argv):
  if any(a != '--durable' for a in argv[1:]):
    print('usage: python -m rcnn_jax.serving.alerts.pgserver [--durable]  (prints the URL of a '
          'throwaway server, serves until SIGTERM/SIGINT)', file=sys.stderr)
    return 2
  durable = '--durable' in argv[1:]
  # The handlers first: a SIGTERM while the cluster starts still stops and removes it.
  done = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: done.set())
  server = start(durable=durable)
  try:
    if not done.is_set():
      print(server.create_database('rcnn'), flush=True)
    done.wait()
  finally:
    server.stop()
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
