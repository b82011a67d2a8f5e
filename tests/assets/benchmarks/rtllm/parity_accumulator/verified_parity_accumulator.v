module parity_accumulator (
  input clk,
  input clear,
  input valid,
  input [15:0] word,
  output reg parity
);
  always @(posedge clk) begin
    if (clear)
      parity <= 1'b0;
    else if (valid)
      parity <= parity ^ (^word);
  end
endmodule
