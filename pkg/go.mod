module vigil.dev/pkg

go 1.26
