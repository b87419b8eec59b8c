module vigil.dev/services/indicators

go 1.26

require vigil.dev/pkg v0.0.0

require github.com/markcheno/go-talib v0.0.0-20250114000313-ec55a20c902f

replace vigil.dev/pkg => ../../pkg
