"""The input side of training, one concern a module: the epoch's order (`order`), reading samples'
byte ranges from shards (`reader`, over `range_reads`), samples and their transforms (`samples`,
`transforms`, `sbi`), the DataLoaders (`loader`) and the ledger of what trained (`ledger`)."""
