module vigil.dev/services/feed

go 1.26

require vigil.dev/pkg v0.0.0

replace vigil.dev/pkg => ../../pkg
