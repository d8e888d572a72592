module example.com/tenant-proxy-go-example

go 1.19
