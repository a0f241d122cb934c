"""Audio compression with the codec: the ``.cclm`` container, entropy coding and file-level API.

* :mod:`~codeclm.compression.format` -- the versioned, checksummed container (``docs/format.md``);
* :mod:`~codeclm.compression.entropy` -- adaptive context model + ``constriction`` range coder;
* :mod:`~codeclm.compression.api` -- ``compress_file``/``decompress_file`` (streaming, atomic);
* the ``codeclm compress/decompress/info`` subcommands live in :mod:`codeclm.cli.compression`.
"""

from codeclm.compression.api import (CompressionStats, compress_file, compress_tensor, decompress_file,
                                     decompress_tensor, load_codec, read_info)
from codeclm.compression.format import MAGIC, VERSION, Header

__all__ = ["MAGIC", "VERSION", "CompressionStats", "Header", "compress_file", "compress_tensor", "decompress_file",
           "decompress_tensor", "load_codec", "read_info"]
