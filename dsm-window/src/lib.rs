//! dsmpi's one-sided DSM windows.
