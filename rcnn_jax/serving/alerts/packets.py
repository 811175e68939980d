"""Alert packet bytes (Avro) -> records: the one decoder of the files and of Kafka messages.

``reader.read_records`` (files) and ``sources.decode_message`` (Kafka message values) both
decode here, through one cache of writer schemas (``Schemas``): a writer schema is parsed, its
projection (``projection``: the fields the readers use) made and its decoding plan compiled
once per distinct schema (by identity, by text, or by a Confluent schema id), never per
message. Forms:

* an Avro object container (Avro 1.11 spec, "Object Container Files": ``Obj\\x01``, a metadata
  map with ``avro.schema`` and ``avro.codec``, a 16-byte sync, then blocks of records): ZTF's
  files and Kafka messages, Fink's Rubin files. Null and deflate blocks are read here (what
  brokers write); another codec goes through ``fastavro.reader`` with the projection;
* the Confluent wire format (Rubin's stream: byte 0, the 4-byte big-endian schema id, one
  schemaless record), its writer schema by id: the caller's, else Rubin's pinned one
  (``rubin_schema``: 100 major + minor, from the ``lsst-alert-packet`` package's files).

Decoding plan (``_Plan``). A record is read field by field in the writer's order: each run of
fields the readers use with ``fastavro.schemaless_reader`` (the run's writer fields, read
through its projection: nested records keep only the subfields used), and each field not used
(ZTF's ``prv_candidates`` and ``fp_hists``, Rubin's ``prvDiaSources`` / ``prvDiaForcedSources``
/ ``diaObject``, the template and difference cutouts, brokers' added blocks) skipped by
position only (``_skipper``). fastavro's own skip walks a skipped array value by value (about
0.2 us each: ~7 ms for one Rubin alert's ~40,000 previous-source values); here an array item
whose type is fixed in shape (records of numbers, booleans and short strings, and unions of
them: every Rubin and ZTF history record) is one ``re`` match of a pattern compiled from the
schema (a union's branch index byte picks the branch; varints end at a byte < 0x80; floats and
doubles are 4 and 8 bytes; a string of up to 255 bytes is its length and that many bytes),
and 16 items a match where they come in a run; a skipped record or map of such values is one
match too. What the pattern does not take (a longer string, a nested array) is skipped by the
plain walker the pattern was made from. A schema the plan cannot be made for (a named type
used twice in one run) is read whole through its projection, as before.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import io
import json
import os
import re
import struct
import zlib

import fastavro

from rcnn_jax.core.errors import UserError

AVRO_MAGIC = b'Obj\x01'  # an Avro object container file
WIRE_MAGIC = 0  # Confluent wire format: byte 0, 4-byte big-endian schema id, Avro body
_CODECS = ('null', 'deflate')  # container codecs decoded here (others: fastavro.reader)
_CACHE_SIZE = 256  # distinct writer schemas kept (by text); a stream meets a handful


class BadPacket(UserError):
  """A packet (or a file) that cannot be classified: one line naming the file and the alert."""


# ----------------------------------------------------------------------------------------------
# The fields the readers use (reader.py), with the earlier names they had (Avro aliases: a
# reader schema's field takes the writer's field of an alias's name). Every other field is
# skipped.

FIELDS = {'objectId': (), 'candid': (), 'candidate': (), 'cutoutScience': (),
          'diaSourceId': (), 'diaSource': ()}
SUBFIELDS = {
    'candidate': {'jd': (), 'fid': (), 'magzpsci': (), 'fwhm': (), 'exptime': (), 'xpos': (),
                  'ypos': (), 'candid': ()},
    'diaSource': {'diaSourceId': (), 'diaObjectId': (), 'ssObjectId': (),
                  'midpointMjdTai': ('midPointTai',),  # lsst.v3_0, v4_0
                  'band': ('filterName',),  # lsst.v3_0, v4_0
                  'ixxPSF': (), 'iyyPSF': ()},
}


def plain(schema):
  """A copy of a schema without fastavro's private keys (``__fastavro_parsed``, ...)."""
  if isinstance(schema, dict):
    return {k: plain(v) for k, v in schema.items() if not str(k).startswith('__')}
  if isinstance(schema, list):
    return [plain(v) for v in schema]
  return schema


def _keep(fields, wanted):
  """The writer's fields that the reader uses, renamed to the reader's names (with the
  writer's name as an alias)."""
  out = []
  for f in fields:
    for name, old in wanted.items():
      if f['name'] == name or f['name'] in old:
        if f['name'] != name:
          f = dict(f, name=name, aliases=[f['name']])
        out.append(f)
        break
  return out


def _used(field):
  return any(field['name'] == n or field['name'] in old for n, old in FIELDS.items())


def projection(schema):
  """The reader schema of a writer schema: only the fields the reader uses, under their current
  names (None: not a record schema, or one whose kept fields refer to a type defined in a
  dropped one: read it whole)."""
  if not isinstance(schema, dict) or schema.get('type') != 'record':
    return None
  s = plain(copy.deepcopy(schema))
  s['fields'] = _keep(s['fields'], FIELDS)
  for f in s['fields']:
    keep = SUBFIELDS.get(f['name'])
    types = f['type'] if isinstance(f['type'], list) else [f['type']]
    for t in types:
      if keep and isinstance(t, dict) and t.get('type') == 'record':
        t['fields'] = _keep(t['fields'], keep)
  try:
    return fastavro.parse_schema(s)
  except (fastavro.schema.UnknownType, fastavro.schema.SchemaParseException, KeyError,
          ValueError, TypeError):
    return None


# ----------------------------------------------------------------------------------------------
# Skipping a value by position (bytes ``b`` from ``pos`` -> the position after it)


def _long(b, pos):
  """An Avro zig-zag varint at ``pos`` -> (value, next pos)."""
  shift = result = 0
  while True:
    c = b[pos]
    pos += 1
    result |= (c & 0x7F) << shift
    if not c & 0x80:
      return (result >> 1) ^ -(result & 1), pos
    shift += 7
    if shift > 63:
      raise ValueError('varint too long')


def _skip_varint(b, pos):
  while b[pos] & 0x80:
    pos += 1
  return pos + 1


def _fixed(n):
  return lambda b, pos: pos + n


def _skip_sized(b, pos):
  n, pos = _long(b, pos)
  if n < 0:
    raise ValueError(f'negative length {n}')
  return pos + n


_VARINT_RX = rb'[\x80-\xff]*+[\x00-\x7f]'
_SHORT = 255  # the longest string or bytes a pattern takes (a longer one: the walker)


def _zigzag(n):
  """The varint encoding of a non-negative long (a length, a union branch index)."""
  v, out = 2 * n, bytearray()
  while v >= 0x80:
    out.append(0x80 | (v & 0x7F))
    v >>= 7
  out.append(v)
  return bytes(out)


_SHORT_RX = b'(?:' + b'|'.join(re.escape(_zigzag(n)) + (b'.{%d}' % n if n else b'')
                               for n in range(_SHORT + 1)) + b')'
_PRIMITIVE_RX = {'null': b'', 'boolean': b'.', 'int': _VARINT_RX, 'long': _VARINT_RX,
                 'float': b'.{4}', 'double': b'.{8}', 'string': _SHORT_RX, 'bytes': _SHORT_RX}
_PRIMITIVE_SKIP = {'null': None, 'boolean': _fixed(1), 'int': _skip_varint,
                   'long': _skip_varint, 'float': _fixed(4), 'double': _fixed(8),
                   'string': _skip_sized, 'bytes': _skip_sized}
_RUN = 16  # array items a match where they come in a run


def _pattern(t):
  """The ``re`` pattern (bytes) of every encoding of a value of type ``t`` when its shape is
  fixed (no array or map; strings and bytes of up to ``_SHORT`` bytes), else None."""
  if isinstance(t, list):
    parts = [_pattern(x) for x in t]
    if any(p is None for p in parts):
      return None
    return b'(?:' + b'|'.join(re.escape(_zigzag(i)) + p for i, p in enumerate(parts)) + b')'
  if isinstance(t, dict):
    kind = t.get('type')
    if kind == 'record':
      parts = [_pattern(f['type']) for f in t['fields']]
      return None if any(p is None for p in parts) else b''.join(parts)
    if kind == 'enum':
      return _VARINT_RX
    if kind == 'fixed':
      return b'.{%d}' % int(t['size'])
    if kind in ('array', 'map'):
      return None
    return _pattern(kind)
  return _PRIMITIVE_RX.get(t)


def _skipper(t):
  """skip(b, pos) -> the position after a value of type ``t`` (expanded: no named
  references), or None for a type of no bytes (null, an empty record)."""
  if isinstance(t, list):
    branches = [_skipper(x) for x in t]

    def skip_union(b, pos):
      i, pos = _long(b, pos)
      if not 0 <= i < len(branches):
        raise IndexError(f'union branch {i} of {len(branches)}')
      s = branches[i]
      return pos if s is None else s(b, pos)
    return skip_union
  if isinstance(t, dict):
    kind = t.get('type')
    if kind == 'record':
      steps = [s for s in (_skipper(f['type']) for f in t['fields']) if s is not None]
      if not steps:
        return None

      def skip_record(b, pos):
        for s in steps:
          pos = s(b, pos)
        return pos
      return skip_record
    if kind == 'enum':
      return _skip_varint
    if kind == 'fixed':
      return _fixed(int(t['size']))
    if kind == 'array':
      return _skip_blocks(t['items'], key=False)
    if kind == 'map':
      return _skip_blocks(t['values'], key=True)
    return _skipper(kind)
  if t not in _PRIMITIVE_SKIP:
    raise ValueError(f'unknown type {t!r}')
  return _PRIMITIVE_SKIP[t]


def _fast_skipper(t):
  """``_skipper(t)``, taking a value of a fixed shape in one ``re`` match where it can."""
  walk = _skipper(t)
  pat = _pattern(t)
  if walk is None or pat is None:
    return walk
  match = re.compile(b'(?s)(?>' + pat + b')').match

  def skip(b, pos):
    m = match(b, pos)
    return m.end() if m is not None else walk(b, pos)
  return skip


def _skip_blocks(items, key):
  """The skipper of an array (or a map: each item a string key, then the value): blocks of a
  count (negative: followed by the block's size in bytes, skipped at once) and the items,
  ended by a count of 0."""
  walk = _skipper(items)
  if key:
    value = walk
    walk = _skip_sized if value is None else (lambda b, pos: value(b, _skip_sized(b, pos)))
  pat = _pattern(items)
  if key and pat is not None:
    pat = _SHORT_RX + pat
  one = many = None
  if pat is not None:
    one = re.compile(b'(?s)(?>' + pat + b')').match
    many = re.compile(b'(?s)(?>' + pat + b'){%d}' % _RUN).match

  def item(b, pos):
    if one is not None:
      m = one(b, pos)
      if m is not None:
        return m.end()
    return pos if walk is None else walk(b, pos)

  def skip_array(b, pos):
    while True:
      n, pos = _long(b, pos)
      if n == 0:
        return pos
      if n < 0:
        size, pos = _long(b, pos)
        pos += size
        continue
      while many is not None and n >= _RUN:
        m = many(b, pos)
        if m is None:
          break
        pos = m.end()
        n -= _RUN
      for _ in range(n):
        pos = item(b, pos)
  return skip_array


# ----------------------------------------------------------------------------------------------
# Decoding plans and the schema cache


class _Plan:
  """How to read a record of one writer schema: runs of used fields read by fastavro (each
  through its projection), the fields between them skipped by position."""

  def __init__(self, writer):
    steps, run = [], []
    fields = writer['fields']
    for f in fields + [None]:
      if f is not None and _used(f):
        run.append(f)
        continue
      if run:
        part = dict(writer, fields=run)
        proj = projection(part)
        if proj is None:
          raise ValueError('no projection of a run of fields')
        steps.append((fastavro.parse_schema(copy.deepcopy(part)), proj))
        run = []
      if f is not None:
        s = _fast_skipper(f['type'])
        if s is not None:
          if steps and callable(steps[-1]):
            prev = steps.pop()
            steps.append(functools.partial(_both, prev, s))
          else:
            steps.append(s)
    self.steps = steps

  def read(self, buf, data):
    """One record from ``buf`` (a BytesIO of ``data``) at its position."""
    rec = {}
    for step in self.steps:
      if callable(step):
        pos = step(data, buf.tell())
        if pos > len(data):
          raise EOFError('truncated record')
        buf.seek(pos)
      else:
        rec.update(fastavro.schemaless_reader(buf, step[0], step[1]))
    return rec


def _both(first, second, b, pos):
  return second(b, first(b, pos))


class Codec:
  """One writer schema: as given (``raw``, what a record is returned with), parsed, its
  projection (``projection``), and its plan (None: read whole through the projection)."""

  def __init__(self, raw, parsed=None):
    self.raw = raw
    self.parsed = parsed if parsed is not None else fastavro.parse_schema(
        plain(copy.deepcopy(raw)))
    self.proj = projection(raw)
    self.plan = None
    if self.proj is not None:
      try:
        expanded = plain(fastavro.schema.expand_schema(copy.deepcopy(self.parsed)))
        self.plan = _Plan(expanded)
      except (fastavro.schema.UnknownType, fastavro.schema.SchemaParseException, KeyError,
              ValueError, TypeError, re.error):
        self.plan = None

  def read(self, buf, data):
    """One record from ``buf`` (a BytesIO of ``data``), the fields the readers use."""
    if self.plan is not None:
      return self.plan.read(buf, data)
    if self.proj is not None:
      return fastavro.schemaless_reader(buf, self.parsed, self.proj)
    return fastavro.schemaless_reader(buf, self.parsed)


class Schemas:
  """Writer schemas parsed once (``Codec``s): the pinned ones of the Confluent wire format
  (id -> schema: ``--schema ID=FILE.avsc``, else Rubin's of that id from lsst-alert-packet),
  and every schema met (a container's header text, a schema object), keyed by text and by
  identity."""

  def __init__(self, by_id=None):
    self._by_id = {}
    self._by_text = {}
    self._by_object = {}  # id(schema) -> (schema, Codec): a caller passing one object again
    self._missing = set()
    for sid, schema in (by_id or {}).items():
      self.add(sid, schema)

  def add(self, schema_id, schema):
    if isinstance(schema, (str, os.PathLike)):
      try:
        with open(schema) as f:
          schema = json.load(f)
      except (OSError, ValueError) as e:
        raise UserError(f'--schema {schema_id}={schema}: {type(e).__name__}: {e}') from None
    self._by_id[int(schema_id)] = self.codec(schema)

  def ids(self):
    return sorted(self._by_id)

  def codec(self, schema) -> Codec:
    """The ``Codec`` of a writer schema (a dict, or its JSON text); ``BadPacket`` if it does
    not parse."""
    if not isinstance(schema, str):
      hit = self._by_object.get(id(schema))
      if hit is not None and hit[0] is schema:
        return hit[1]
    key = schema if isinstance(schema, str) else json.dumps(plain(schema), sort_keys=True)
    got = self._by_text.get(key)
    if got is None:
      try:
        if isinstance(schema, str):  # a container's header: as fastavro.reader gives it
          parsed = fastavro.parse_schema(json.loads(schema))
          got = Codec(plain(parsed), parsed)
        else:
          got = Codec(schema)
      except (fastavro.schema.SchemaParseException, fastavro.schema.UnknownType, KeyError,
              ValueError, TypeError, AttributeError) as e:
        raise BadPacket(f'an unreadable writer schema ({type(e).__name__}: {e})') from None
      if len(self._by_text) >= _CACHE_SIZE:
        self._by_text.clear()
      self._by_text[key] = got
    if not isinstance(schema, str):
      if len(self._by_object) >= _CACHE_SIZE:
        self._by_object.clear()
      self._by_object[id(schema)] = (schema, got)
    return got

  def by_id(self, schema_id):
    """The ``Codec`` given for ``schema_id``, else Rubin's of that id from the pinned
    lsst-alert-packet (``rubin_schema``), else None."""
    got = self._by_id.get(schema_id)
    if got is None and schema_id not in self._missing:
      try:
        got = self._by_id[schema_id] = self.codec(_rubin_schema(schema_id))
      except KeyError:
        self._missing.add(schema_id)
    return got


SCHEMAS = Schemas()  # the files' and ``reader.decode_message``'s cache


# ----------------------------------------------------------------------------------------------
# Rubin's pinned schemas


@functools.cache
def rubin_schema_root():
  # The .avsc files of lsst-alert-packet (pinned in pyproject.toml), found without importing the
  # package (its import pulls lsst.resources and lsst.utils; only its schema files are used).
  spec = importlib.util.find_spec('lsst.alert.packet')
  if spec is None or not spec.submodule_search_locations:
    return None
  return os.path.join(list(spec.submodule_search_locations)[0], 'schema')


def rubin_schema_ids() -> list[int]:
  """The schema ids of every Rubin alert schema that lsst-alert-packet holds (100 major +
  minor: 1101 = ``lsst.v11_1.alert``, as Rubin's schema registry numbers them)."""
  root = rubin_schema_root()
  out = []
  for major in sorted(os.listdir(root)) if root and os.path.isdir(root) else ():
    if major.isdigit() and os.path.isdir(os.path.join(root, major)):
      out += [100 * int(major) + int(m) for m in os.listdir(os.path.join(root, major))
              if m.isdigit()]
  return sorted(out)


@functools.cache
def _rubin_schema(schema_id: int):
  major, minor = divmod(int(schema_id), 100)
  root = rubin_schema_root()
  path = os.path.join(root or '', str(major), str(minor), f'lsst.v{major}_{minor}.alert.avsc')
  if root is None or not os.path.isfile(path):
    raise KeyError(schema_id)
  return plain(fastavro.schema.load_schema(path))


def rubin_schema(schema_id: int):
  """Rubin's writer schema of a schema id (``rubin_schema_ids``), from lsst-alert-packet's files,
  nested types expanded (a copy); ``KeyError`` for an id it does not hold."""
  return copy.deepcopy(_rubin_schema(schema_id))


# ----------------------------------------------------------------------------------------------
# Containers


def _read_long(f, first=b''):
  """A zig-zag varint from a file object (``first``: its first byte, read already); EOFError
  at its end."""
  shift = result = 0
  while True:
    c, first = first or f.read(1), b''
    if not c:
      raise EOFError('truncated varint')
    c = c[0]
    result |= (c & 0x7F) << shift
    if not c & 0x80:
      return (result >> 1) ^ -(result & 1)
    shift += 7
    if shift > 63:
      raise ValueError('varint too long')


def _read_exactly(f, n):
  data = f.read(n)
  if len(data) != n:
    raise EOFError(f'truncated: {len(data)} of {n} bytes')
  return data


def _header(f):
  """(``avro.schema`` text, ``avro.codec``, sync marker) of a container's header."""
  if f.read(4) != AVRO_MAGIC:
    raise ValueError('not an Avro container (no Obj\\x01 magic)')
  meta = {}
  while True:
    n = _read_long(f)
    if n == 0:
      break
    if n < 0:
      n = -n
      _read_long(f)
    for _ in range(n):
      key = _read_exactly(f, _read_long(f))
      meta[key] = _read_exactly(f, _read_long(f))
  if b'avro.schema' not in meta:
    raise ValueError('no avro.schema in the container header')
  return (meta[b'avro.schema'].decode(), meta.get(b'avro.codec', b'null').decode(),
          _read_exactly(f, 16))


def container(f, schemas: Schemas | None = None):
  """(``Codec``, records) of an Avro container read from the file object ``f``; the records
  (the fields the readers use) are read lazily, block by block, and raise at a truncated or
  corrupt block (the records before it yielded)."""
  schemas = schemas if schemas is not None else SCHEMAS
  start = f.tell()
  text, codec_name, sync = _header(f)
  codec = schemas.codec(text)
  if codec_name not in _CODECS:
    f.seek(start)
    reader = (fastavro.reader(f, reader_schema=codec.proj) if codec.proj is not None
              else fastavro.reader(f))
    return codec, iter(reader)
  return codec, _blocks(f, codec, codec_name, sync)


def _blocks(f, codec, codec_name, sync):
  while True:
    first = f.read(1)
    if not first:
      return
    count = _read_long(f, first)
    block = _read_exactly(f, _read_long(f))
    if codec_name == 'deflate':
      block = zlib.decompress(block, -15)
    buf = io.BytesIO(block)
    for _ in range(count):
      yield codec.read(buf, block)
    if buf.tell() != len(block):
      raise ValueError(f'{len(block) - buf.tell()} bytes left in a block')
    if f.read(16) != sync:  # after the block's records, as fastavro.reader checks it
      raise ValueError('sync marker mismatch or missing after a block')


# ----------------------------------------------------------------------------------------------
# One Kafka message


_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError,
           struct.error, zlib.error, fastavro.read.SchemaResolutionError)


def decode_message(data, schemas: Schemas | None = None, label='message', schema=None):
  """One Kafka message value -> (records, writer schema as given), each record holding the
  fields the readers use, for ``reader.decode``. An Avro container (its schema inside) or the
  Confluent wire format, whose writer schema is ``schema`` if given, else ``schemas.by_id``'s
  (the pinned ones, then Rubin's). ``BadPacket`` naming ``label`` otherwise."""
  schemas = schemas if schemas is not None else SCHEMAS
  if data is None or len(data) == 0:
    raise BadPacket(f'{label}: an empty message')
  data = bytes(data)
  if data[:4] == AVRO_MAGIC:
    try:
      codec, recs = container(io.BytesIO(data), schemas)
      return list(recs), codec.raw
    except BadPacket as e:
      raise BadPacket(f'{label}: {e}') from None
    except _ERRORS as e:
      raise BadPacket(f'{label}: undecodable message: corrupt Avro container '
                      f'({type(e).__name__}: {str(e)[:120]})') from None
  if len(data) < 6 or data[0] != WIRE_MAGIC:
    raise BadPacket(f'{label}: neither an Avro container nor the Confluent wire format '
                    f'(Obj\\x01; or magic byte 0, schema id, Avro body): first bytes '
                    f'{data[:8]!r}')
  (sid,) = struct.unpack('>I', data[1:5])
  codec = schemas.codec(schema) if schema is not None else schemas.by_id(sid)
  if codec is None:
    if rubin_schema_root() is None:
      raise BadPacket(f'{label}: unknown schema id {sid}: Rubin\'s schemas by id need the '
                      "lsst-alert-packet package (pip install 'rcnn_jax[rubin]'), or give "
                      'the writer schema (--schema ID=FILE.avsc)')
    raise BadPacket(f'{label}: unknown schema id {sid}: neither a schema given (--schema '
                    f'ID=FILE.avsc) nor one of Rubin\'s in lsst-alert-packet '
                    f'({", ".join(map(str, rubin_schema_ids()))})')
  buf = io.BytesIO(data)
  buf.seek(5)
  try:
    rec = codec.read(buf, data)
  except _ERRORS as e:
    raise BadPacket(f'{label}: undecodable message: the body does not decode with schema id '
                    f'{sid} ({type(e).__name__}: {str(e)[:120]})') from None
  left = len(data) - buf.tell()
  if left:
    raise BadPacket(f'{label}: undecodable message: the body does not decode with schema id '
                    f'{sid} ({left} bytes left over)')
  return [rec], codec.raw
