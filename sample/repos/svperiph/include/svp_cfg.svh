// svperiph build configuration: register-file address width and reset values.
`ifndef SVP_CFG_SVH
`define SVP_CFG_SVH

`define SVP_ADDR_W 12
`define SVP_CTRL_RESET 32'h0000_0001

`endif
