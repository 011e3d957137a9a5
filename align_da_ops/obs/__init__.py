"""The observation side: ObsBatch (IODA semantics), BUFR decoders, feed, synthetic networks, H, QC, monitoring.

Modules: `batch` (ObsBatch, QCFlag), `ioda` (NetCDF I/O), `bufr` (WMO BUFR via ecCodes),
`feed` (directory drop), `networks` + `stations` (OSSE networks), `operators` (H),
`qc`, `monitoring` (O−B/O−A), `config` (pydantic models), `cli`, `bench`.
"""

from align_da_ops.obs.batch import ObsBatch, QCFlag
from align_da_ops.obs.operators import GridInterpolator, ObservationOperator

__all__ = ["GridInterpolator", "ObsBatch", "ObservationOperator", "QCFlag"]
